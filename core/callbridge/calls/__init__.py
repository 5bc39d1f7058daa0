"""Call handling: intake, routing, claim and the media bridge."""
