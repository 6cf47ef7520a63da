"""TaylorSeer-DiT: class-conditional DiT sampling with TaylorSeer feature forecasting."""
