"""Act: rules that fire actions (webhooks, review tasks, dataset exports, prompt candidates,
knowledge-base refreshes), and the measurement of each firing's effect against a control."""
