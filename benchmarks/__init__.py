"""`make bench`: llamapyz timed against its peers, printed as one table of ratios."""
