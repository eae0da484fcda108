"""rnn: recurrent nets written as layered feed-forward tinygraph graphs with tied weights."""
