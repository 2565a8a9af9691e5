"""An OAuth 2.0 app written with authlib, run against the Portcullis token service.

Drives both grants end to end: client credentials with a mutual-TLS client
certificate, and the authorization code grant with PKCE, including the
customer's consent step, refresh token rotation and reuse detection.
Prints one JSON object with what each step returned.

Usage: authlib_client.py TOKEN_URL CONSENT_URL CERT KEY CA_BUNDLE CUSTOMER SECRET
"""

import html.parser
import json
import sys
import urllib.parse

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session, OAuthError

token_url, consent_url, cert, key, ca_bundle, customer, secret = sys.argv[1:8]
client_cert = (cert, key)
redirect_uri = "https://app.example/callback"
results = {}


class FormFields(html.parser.HTMLParser):
    """Collects the hidden inputs of the consent form."""

    def __init__(self):
        super().__init__()
        self.fields = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input" and attrs.get("type") == "hidden":
            self.fields[attrs["name"]] = attrs.get("value", "")


def error_of(call):
    """Runs call and returns the OAuth error code it raised, or None."""
    try:
        call()
    except OAuthError as error:
        return error.error
    return None


# Client credentials (RFC 6749 section 4.4) with tls_client_auth (RFC 8705).
app = OAuth2Session("weather-app", scope="weather:read", token_endpoint_auth_method="none")
token = app.fetch_token(token_url, grant_type="client_credentials", cert=client_cert, verify=ca_bundle)
results["client_credentials"] = {k: token.get(k) for k in ("token_type", "scope", "expires_in")}
results["client_credentials"]["access_token"] = token["access_token"]
results["client_credentials_ungranted"] = error_of(
    lambda: OAuth2Session("weather-app", scope="records:write", token_endpoint_auth_method="none").fetch_token(
        token_url, grant_type="client_credentials", cert=client_cert, verify=ca_bundle
    )
)

# Authorization code with PKCE S256 (RFC 7636).
session = OAuth2Session(
    "weather-app",
    redirect_uri=redirect_uri,
    scope="weather:read",
    code_challenge_method="S256",
    token_endpoint_auth_method="none",
)
verifier = generate_token(64)
authorize_url, state = session.create_authorization_url(consent_url + "/oauth2/authorize", code_verifier=verifier)

# The customer's browser: load the consent page, sign in, approve.
browser = requests.Session()
page = browser.get(authorize_url, verify=ca_bundle)
results["consent_page_status"] = page.status_code
form = FormFields()
form.feed(page.text)
fields = dict(form.fields, customer_id=customer, customer_secret=secret, decision="approve")
answer = browser.post(consent_url + "/oauth2/authorize", data=fields, verify=ca_bundle, allow_redirects=False)
results["consent_status"] = answer.status_code
location = answer.headers["Location"]
redirect_query = urllib.parse.parse_qs(urllib.parse.urlparse(location).query)
results["redirect_state_matches"] = redirect_query["state"][0] == state
results["redirect_has_code"] = "code" in redirect_query and "error" not in redirect_query

# The same form posted again is refused: each form is accepted once.
results["consent_replay_status"] = browser.post(
    consent_url + "/oauth2/authorize", data=fields, verify=ca_bundle, allow_redirects=False
).status_code

# A forged form without the CSRF token is refused.
forged = dict(fields)
forged.pop("csrf")
results["consent_without_csrf_status"] = browser.post(
    consent_url + "/oauth2/authorize", data=forged, verify=ca_bundle, allow_redirects=False
).status_code

token = session.fetch_token(
    token_url, authorization_response=location, code_verifier=verifier, cert=client_cert, verify=ca_bundle
)
results["authorization_code"] = {k: token.get(k) for k in ("token_type", "scope", "expires_in")}
results["authorization_code"]["has_refresh_token"] = "refresh_token" in token

# Refresh tokens rotate; reusing a spent one revokes the family.
first_refresh = token["refresh_token"]
refreshed = session.refresh_token(token_url, refresh_token=first_refresh, cert=client_cert, verify=ca_bundle)
results["refresh_rotated"] = refreshed["refresh_token"] != first_refresh
second_refresh = refreshed["refresh_token"]
results["refresh_reuse"] = error_of(
    lambda: session.refresh_token(token_url, refresh_token=first_refresh, cert=client_cert, verify=ca_bundle)
)
results["refresh_after_family_revoked"] = error_of(
    lambda: session.refresh_token(token_url, refresh_token=second_refresh, cert=client_cert, verify=ca_bundle)
)
results["refreshed_access_token"] = refreshed["access_token"]

# Denial sends access_denied back to the app.
session2 = OAuth2Session("weather-app", redirect_uri=redirect_uri, scope="weather:read", code_challenge_method="S256")
deny_url, _ = session2.create_authorization_url(consent_url + "/oauth2/authorize", code_verifier=generate_token(64))
page = browser.get(deny_url, verify=ca_bundle)
form = FormFields()
form.feed(page.text)
denied = browser.post(
    consent_url + "/oauth2/authorize",
    data=dict(form.fields, decision="deny"),
    verify=ca_bundle,
    allow_redirects=False,
)
results["deny_error"] = urllib.parse.parse_qs(urllib.parse.urlparse(denied.headers["Location"]).query)["error"][0]

# Guessing a customer's secret is rate limited: 5 attempts a minute.
guesses = []
for attempt in range(7):
    guess_url, _ = OAuth2Session(
        "weather-app", redirect_uri=redirect_uri, scope="weather:read", code_challenge_method="S256"
    ).create_authorization_url(consent_url + "/oauth2/authorize", code_verifier=generate_token(64))
    page = browser.get(guess_url, verify=ca_bundle)
    form = FormFields()
    form.feed(page.text)
    answer = browser.post(
        consent_url + "/oauth2/authorize",
        data=dict(form.fields, customer_id="bob", customer_secret="guess-%d" % attempt, decision="approve"),
        verify=ca_bundle,
        allow_redirects=False,
    )
    guesses.append(answer.status_code)
results["secret_guesses"] = guesses

# Replaying a spent code fails and revokes what was issued from it.
results["code_replay"] = error_of(
    lambda: session.fetch_token(
        token_url, authorization_response=location, code_verifier=verifier, cert=client_cert, verify=ca_bundle
    )
)

print(json.dumps(results))
