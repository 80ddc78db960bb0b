"""The raw-event contract, the Faker generator and bad-event injection."""
