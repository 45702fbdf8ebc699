"""Running the DVC pipeline from outside DVC: the stage runner for Prefect and GPU slots for concurrent cells."""
