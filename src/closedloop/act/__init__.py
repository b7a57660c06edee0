"""Act: rules that fire actions, and the measurement of their effect (built by later work)."""
