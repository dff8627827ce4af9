"""What the host kernel offers: its mount table and mount calls, shared with the snapshotter."""
