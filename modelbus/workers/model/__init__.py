"""Model workers: the model file catalog and pull, the local (llama.cpp) and OpenAI-compatible providers."""
