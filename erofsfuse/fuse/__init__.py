"""The FUSE server: the tree a mount serves (one image or a stack) and the pyfuse3 operations."""
