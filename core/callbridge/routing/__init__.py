"""Routing: the strategy chain, the rule engine and the explanations both give."""
