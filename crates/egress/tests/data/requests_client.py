"""Fetch URLs through the egress proxy with Python requests.

Usage: requests_client.py PROXY_URL CA_FILE URL...

Prints one JSON object per URL: the status and the start of the body, or,
when requests raises ProxyError (a refused CONNECT), the error's message.
Proxy variables of the environment are ignored.
"""

import json
import sys

import requests


def main() -> None:
    proxy, ca_file, *urls = sys.argv[1:]
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": proxy, "https": proxy}

    for url in urls:
        try:
            response = session.get(url, verify=ca_file, timeout=10)
            result = {"url": url, "status": response.status_code, "body": response.text[:300]}
        except requests.exceptions.ProxyError as error:
            result = {"url": url, "status": None, "error": str(error)[:300]}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
