"""SDK: what an app uses to send interactions and feedback (the light install)."""
