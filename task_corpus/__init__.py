"""Where meta-training tasks come from: real tables, a synthetic prior, and a task sampler."""
