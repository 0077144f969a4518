"""The seed scenario from the official openai SDK: a plain for loop, one request after the other.

Usage: sdk_loop.py BASE_URL USER MODEL N
Prints one word per request: "ok", or the name of the SDK's exception.
"""

import sys

import openai


def main():
    base_url, user, model, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    # Retries off: the loop sees every 429 itself, as an application that handles them does.
    client = openai.OpenAI(
        base_url=base_url,
        api_key="unused",
        default_headers={"x-user-id": user},
        max_retries=0,
    )
    for _ in range(n):
        try:
            client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "Hello from Alice!"}],
            )
            print("ok")
        except openai.APIStatusError as e:
            print(type(e).__name__)


if __name__ == "__main__":
    main()
