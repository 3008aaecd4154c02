"""Reading data: the one record decoder every command uses, BEIR collections and their metrics."""
