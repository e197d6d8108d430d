"""`omk-ray view`: a read-only local web page over a results folder (the card navigable, problem pages, the live grid)."""
