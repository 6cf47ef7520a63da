"""TaylorSeer-FLUX: FLUX.1 text-to-image with TaylorSeer feature forecasting."""
