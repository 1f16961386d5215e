"""chargesight.common."""
