"""The scheduler: hosts, tasks and peers; ranks parents; triggers seed peers."""
