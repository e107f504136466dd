// Managed by govstack-deploy. Upstream lane (the official nginx image ships
// njs): the per-API-key rate limit's bucket is a hash of the key, never the
// key itself; no key, no bucket. The offline lane uses set-misc's set_sha1.
import crypto from 'crypto';

function sha1(r) {
    const key = r.headersIn['X-API-Key'];
    return key ? crypto.createHash('sha1').update(key).digest('hex') : '';
}

export default { sha1 };
