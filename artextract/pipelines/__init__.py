"""Ray Data graphs composing the Ray-free stages."""
