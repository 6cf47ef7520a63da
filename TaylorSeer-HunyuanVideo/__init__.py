"""TaylorSeer-HunyuanVideo: text-to-video with HunyuanVideo and TaylorSeer caching."""
