"""chargesight.cloud."""
