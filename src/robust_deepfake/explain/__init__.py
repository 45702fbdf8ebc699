"""Grad-CAM, IINC and the CAM-under-attack measurement and figures."""
