"""target-lago: a Singer target writing events, customers and subscriptions to Lago."""

__version__ = "0.1.0"
