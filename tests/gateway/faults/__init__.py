"""Gateway faults: the real process killed mid-download, the upstream cut, the disk full."""
