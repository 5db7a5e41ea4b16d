#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian 12 machine (as root), from a clone of pgi:
#   1. install what pgi needs and build it (scripts/install-deps.sh);
#   2. build the reference image pgi-tryton, or reuse the newest one already built;
#   3. start a local lab hypervisor with real QEMU VMs (PVE-compatible API on 127.0.0.1), 2 sites;
#   4. deploy both establishments (pgi deploy), which writes each AMI's handoff file;
#   5. show their status (pgi status);
#   6. log into each establishment's database "pgi" (made by deploy) as the handoff's Tryton admin,
#      through the web client's address, as the AMI's browser would;
#   7. say how to open the web client and the handoffs, and how to stop the lab.
# Every step must succeed: the first failure stops the script with its error (set -e).
#
# Settings (environment): PGI_DEMO_DIR (default <state dir>/demo), PGI_IMAGES_DIR, PGI_IMAGE
# (a version to use instead of the newest/built one), PGI_IMAGE_MIRROR (apt sources for the build;
# default: this host's own apt sources).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*" >&2; }
pgi() { ./bin/run.js "$@"; }
json_field() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const v=(0,eval)("(j)=>"+process.argv[1])(JSON.parse(s));if(v===undefined||v===null)process.exit(3);console.log(typeof v==="string"?v:JSON.stringify(v))})' "$1"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/demo.sh must run as root (image build and QEMU need it)." >&2
  exit 1
fi

say "1/7 Installing dependencies and building pgi"
bash scripts/install-deps.sh

STATE="${PGI_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/pgi}"
DEMO="${PGI_DEMO_DIR:-$STATE/demo}"
LAB="$DEMO/lab"
HANDOFFS="$DEMO/handoffs"
mkdir -p "$DEMO"

say "2/7 The reference image"
VERSION="${PGI_IMAGE:-}"
if [ -z "$VERSION" ]; then
  VERSION=$(pgi image list --json --log-level error | json_field 'j.result.filter(i=>i.name==="pgi-tryton").map(i=>i.version).pop()' || true)
fi
if [ -z "$VERSION" ]; then
  echo "No pgi-tryton image built yet: building it (a few minutes)." >&2
  # --allow-lock-drift: Debian keeps only its latest versions; where image.lock is older, the build
  # takes the current ones (listed in the manifest) rather than failing on a fresh machine
  VERSION=$(pgi image build pgi-tryton --allow-lock-drift --json | json_field 'j.result.version')
else
  echo "Using image pgi-tryton $VERSION." >&2
fi
pgi image verify "$VERSION" >&2

say "3/7 Starting a local lab hypervisor (real QEMU VMs) with 2 establishments"
if pgi lab status --dir "$LAB" --json --log-level error 2>/dev/null | json_field 'j.result.running' 2>/dev/null | grep -qx true; then
  echo "A lab is already running in $LAB: using it." >&2
else
  pgi lab start --backend qemu --nodes 1 --sites 2 --dir "$LAB"
fi
export PGI_INVENTORY="$LAB/inventory/lab.yaml"
export PGI_SECRETS_DIR="$LAB/secrets"

say "4/7 Deploying both establishments (this boots real VMs in software emulation: be patient)"
# exits non-zero (4 partial, 8 unreachable…) when an establishment fails: set -e stops here then
pgi deploy --all --yes --image "$VERSION" --lab-dir "$LAB" --handoff-dir "$HANDOFFS"

say "5/7 Status"
pgi status --all

say "6/7 Logging into each establishment's database through its web client's address"
# The address printed below for each VM: the lab's forward of the VM's HTTPS port (nginx, the VM's
# own certificate, made at its first boot: a browser asks to accept it once).
WEB_JSON=$(pgi lab status --dir "$LAB" --json --log-level error | json_field 'Object.fromEntries(j.result.vms.map(v=>[v.name,(v.access&&v.access.endpoints&&v.access.endpoints.https)?`https://${v.access.endpoints.https}/`:""]))')
# The handoff is opened with the AMI's key (as the AMI would) and piped to node: the password goes
# from pgi's stdout to node's stdin, never to a command line or the screen. node logs in with the
# call the web client makes (Tryton's JSON-RPC common.db.login) at that address, into each database
# the handoff lists, and shows the certificate's fingerprint (to compare with the browser's).
LOGINS=""
for f in "$HANDOFFS"/*.handoff.age; do
  line=$(pgi credentials open "$f" --identity "$LAB/ami-identity.txt" --json --log-level error | PGI_DEMO_WEB="$WEB_JSON" node -e '
const https = require("node:https")
// the VM presents its own self-signed certificate: this one check accepts it, on loopback, and
// prints its fingerprint; nothing else in pgi turns certificate checks off
const agent = new https.Agent({rejectUnauthorized: false})
const post = (url, body, auth) => new Promise((resolve, reject) => {
  const req = https.request(url, {method: "POST", agent, headers: {"Content-Type": "application/json", ...(auth ? {Authorization: "Session " + Buffer.from(auth).toString("base64")} : {})}}, (res) => {
    let data = ""
    res.on("data", (d) => (data += d)).on("end", () => { try { resolve({json: JSON.parse(data), fp: res.socket.getPeerCertificate().fingerprint256}) } catch (e) { reject(new Error(`${url}: HTTP ${res.statusCode}, not JSON`)) } })
  })
  req.on("error", reject)
  req.end(JSON.stringify(body))
})
let s = ""
process.stdin.on("data", (d) => (s += d)).on("end", async () => {
  const h = JSON.parse(s).result
  const url = JSON.parse(process.env.PGI_DEMO_WEB)[h.vm.name] || h.web_client.url
  const dbs = (h.databases ?? [{name: h.desktop_client.database}]).map((d) => d.name)
  if (dbs.length === 0) { console.error(`${h.establishment.uai}: the server has no database`); process.exit(1) }
  let fp = ""
  for (const db of dbs) {
    const r = await post(`${url}${db}/`, {id: 1, method: "common.db.login", params: [h.tryton_admin.login, {password: h.tryton_admin.password}, "fr"]})
    fp = r.fp
    if (!Array.isArray(r.json.result)) { console.error(`${h.establishment.uai}: Tryton refused ${h.tryton_admin.login} on ${db} at ${url}: ${JSON.stringify(r.json.error)}`); process.exit(1) }
    await post(`${url}${db}/`, {id: 2, method: "common.db.logout", params: []}, `${h.tryton_admin.login}:${r.json.result[0]}:${r.json.result[1]}`)
  }
  console.log(`  ${h.establishment.name} (${h.establishment.uai}): ${url} → database ${dbs.join(", ")}, user ${h.tryton_admin.login}: logged in (certificate SHA-256 ${fp})`)
})')
  echo "$line" >&2
  LOGINS="$LOGINS$line
"
done

say "7/7 What next"
cat <<EOF

The two PGI servers are deployed and healthy, each with its Tryton database "pgi" (company named
after the establishment, French chart of accounts, this year's fiscal year), ready for class.
Web client (Tryton, thin client) of each establishment, from this machine — checked just now: the
handoff's Tryton admin logs into its database there (the browser asks once to accept the VM's own
certificate; compare its fingerprint with the one shown):
$LOGINS
  Database: pgi, user: admin, password: in the establishment's handoff (below).

The AMI's access codes (one file per establishment, readable only with the AMI's key):
  ls $HANDOFFS
  ./bin/run.js credentials open $HANDOFFS/<UAI>.handoff.age --identity $LAB/ami-identity.txt
  (the real age tool opens them too: age -d -i $LAB/ami-identity.txt <file>)

Use this lab with other commands:
  export PGI_INVENTORY=$PGI_INVENTORY PGI_SECRETS_DIR=$PGI_SECRETS_DIR

Stop the lab (stops every VM; the lab folder is kept):
  ./bin/run.js lab stop --dir $LAB
EOF
