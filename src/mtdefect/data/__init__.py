"""Archive → dataset folder → split manifest → tensors."""
