"""The OpenAI wire formats: request schemas, and builders of the answers the gateway makes itself."""
