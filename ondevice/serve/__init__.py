"""``ondevice serve``: an OpenAI-compatible HTTP service on the device.

``app`` builds the aiohttp application around one long-lived ``ondevice.llm.device.Device``;
``openai_api`` validates requests and builds responses in OpenAI's shapes; ``_chat`` renders
chat messages with the model's own template through llama.cpp. The command is
``ondevice.cli.serve``; decisions are in docs/api.md.
"""
