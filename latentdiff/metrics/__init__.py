"""Metrics. ``image``: MSE, PSNR, SSIM, LPIPS for reconstructions."""

from latentdiff.metrics.image import lpips_distance, mse, psnr, ssim

__all__ = ["mse", "psnr", "ssim", "lpips_distance"]
