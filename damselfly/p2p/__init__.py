"""The peer: tasks, pieces and the piece store behind the mirror."""
