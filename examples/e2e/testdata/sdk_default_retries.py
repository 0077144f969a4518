"""One request from the official openai SDK with its default retries (2, with backoff).

Usage: sdk_default_retries.py BASE_URL USER MODEL
Prints "ok", or the name of the SDK's exception and the seconds the call took.
"""

import sys
import time

import openai


def main():
    base_url, user, model = sys.argv[1], sys.argv[2], sys.argv[3]
    client = openai.OpenAI(base_url=base_url, api_key="unused", default_headers={"x-user-id": user})
    start = time.monotonic()
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello!"}])
        print("ok")
    except openai.APIStatusError as e:
        print(type(e).__name__, round(time.monotonic() - start, 2))


if __name__ == "__main__":
    main()
