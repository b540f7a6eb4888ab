// Seeds the metadata table enrichproxy joins on (database metrics, collection pod_metadata, as
// conf/compose/enrichproxy.yaml reads it) from metadata.json, next to this file.
//
// The mongo image runs *.js files in /docker-entrypoint-initdb.d with mongosh once, at the first
// start of an empty data volume (`podman compose down -v` to seed again). It has no YAML parser,
// so metadata.json is a copy of conf/metadata.yaml; tests/test_deploy.py checks they agree.
// Regenerate it with:
//   .venv/bin/python -c 'import json, yaml; print(json.dumps(yaml.safe_load(open("conf/metadata.yaml")), indent=2))' > conf/mongo-init/metadata.json
const fs = require("fs");

const SEED_FILE = "/docker-entrypoint-initdb.d/metadata.json";
const DATABASE = "metrics";
const COLLECTION = "pod_metadata";
const KEY_FIELD = "pod";

// compose.yaml starts mongod with --replSet, and the image runs this script against a member
// of a set nobody has initiated yet, which takes no writes. Initiate it with one member named
// by the address this mongod serves on in every phase (clients connect with
// directConnection=true), then wait until it is primary. A standalone mongod, or a set that is
// already initiated, is used as it is.
const PRIMARY_WAIT_MS = 60000;
const PRIMARY_POLL_MS = 200;

function ensureWritable() {
  try {
    rs.status();
    return;
  } catch (error) {
    if (error.codeName === "NoReplicationEnabled") return;
    if (error.codeName !== "NotYetInitialized") throw error;
  }
  const options = db.adminCommand({ getCmdLineOpts: 1 }).parsed;
  const name = options.replication.replSetName || options.replication.replSet;
  const port = (options.net && options.net.port) || 27017;
  rs.initiate({ _id: name, members: [{ _id: 0, host: `localhost:${port}` }] });
  const deadline = Date.now() + PRIMARY_WAIT_MS;
  while (!db.hello().isWritablePrimary) {
    if (Date.now() > deadline) throw new Error(`replica set ${name}: no primary after ${PRIMARY_WAIT_MS} ms`);
    sleep(PRIMARY_POLL_MS);
  }
  print(`initiated the one-member replica set ${name}`);
}

ensureWritable();
const documents = JSON.parse(fs.readFileSync(SEED_FILE, "utf8"));
const collection = db.getSiblingDB(DATABASE).getCollection(COLLECTION);
// One document per pod: enrichproxy keeps the later one of duplicates and counts them.
collection.createIndex({ [KEY_FIELD]: 1 }, { unique: true });
for (const document of documents) {
  collection.replaceOne({ [KEY_FIELD]: document[KEY_FIELD] }, document, { upsert: true });
}
print(`seeded ${DATABASE}.${COLLECTION} with ${documents.length} documents from ${SEED_FILE}`);
