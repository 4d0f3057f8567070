"""Evaluation metrics of the talking-face literature: LSE-C / LSE-D (SyncNet), LPIPS,
PSNR / SSIM with piq's conventions."""
