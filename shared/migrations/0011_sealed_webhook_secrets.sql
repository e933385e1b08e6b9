-- Webhook signing secrets are sealed at rest (issue 17): `secret` and `previous_secret`
-- hold `sealed:v1:<key id>:<hex nonce>:<hex ciphertext>` (XChaCha20-Poly1305 under
-- TENANTRY_SECRETS_KEY, the tenant id as associated data; see webhook::sealing). Rows
-- written in clear before this are sealed by the dispatcher when it starts, not here:
-- the key is the operator's and never reaches the database.
COMMENT ON COLUMN webhook_secrets.secret IS
    'sealed:v1:<key id>:<nonce>:<ciphertext>, see tenantry::webhook::sealing';
COMMENT ON COLUMN webhook_secrets.previous_secret IS
    'sealed like secret; signs beside it until previous_until';
