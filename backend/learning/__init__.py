"""The learning path: webhook events -> training store -> fine-tuning job -> promotion gate -> served version."""
