"""TF wrapper of the RANSAC-PnP op."""
