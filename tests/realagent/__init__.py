"""Running real, third-party ACP agents offline: a mock of the Anthropic Messages API and agent locators."""
