"""Stand-in workers for launcher failure paths: real processes that misbehave on purpose."""
