"""Built-in lifecycle-webhook signers."""
