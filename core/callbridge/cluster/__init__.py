"""What crosses replicas: commands to the replica that holds a call, over Redis."""
