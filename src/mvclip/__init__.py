"""mvclip: mobile video-text models of the MobileViCLIP family."""
__version__ = "0.1.0"
