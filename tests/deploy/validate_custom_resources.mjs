// Validates KEDA and Prometheus Operator objects (a JSON array in the file named by argv[2]) against the CRD
// schemas shipped by the @kubernetes-models packages: types, enums and required fields, as the API server
// would (unknown fields are pruned by a CRD, not rejected, so they are not errors here either).
// Run from build/crd-models, where tests/deploy/test_deploy_custom_resources.py installs the packages.
import { readFileSync } from "node:fs";
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";
import * as prometheus from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = { "keda.sh/v1alpha1": keda, "monitoring.coreos.com/v1": prometheus };
let failed = 0;
for (const object of JSON.parse(readFileSync(process.argv[2], "utf8"))) {
  const Model = models[object.apiVersion]?.[object.kind];
  const name = `${object.kind}/${object.metadata?.name}`;
  if (!Model) {
    console.log(`FAIL ${name}: no model for ${object.apiVersion}`);
    failed += 1;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`ok ${name}`);
  } catch (error) {
    console.log(`FAIL ${name}: ${error.message}`);
    failed += 1;
  }
}
process.exit(failed ? 1 : 0);
