// Qdrant's JavaScript gRPC client against embedshift's gRPC port: with the write key, writes
// three Documents into an alias; lists the collections, searches the alias by Document under a
// user's affinity key, deletes a point and reads what is left. Prints what it saw as JSON.
import { QdrantClient } from "@qdrant/js-client-grpc";

const [host, port, alias, user, writeKey] = process.argv.slice(2);
const warnings = [];
console.warn = (message) => warnings.push(String(message));
const options = { host, port: Number(port), headers: { "x-qdrant-route-affinity": user },
                  checkCompatibility: false };  // checked below, awaited
const reader = new QdrantClient(options);
const writer = new QdrantClient({ ...options, apiKey: writeKey, https: false });

const byText = (text) => ({ variant: { case: "nearest", value: { variant: {
  case: "document", value: { text, model: "any" } } } } });
const payloadToo = { selectorOptions: { case: "enable", value: true } };
const point = (id, text) => ({
  id: { pointIdOptions: { case: "num", value: BigInt(id) } },
  vectors: { vectorsOptions: { case: "vector", value: { vector: {
    case: "document", value: { text, model: "any" } } } } },
  payload: { title: { kind: { case: "stringValue", value: text } } } });
const health = await reader.api("service").healthCheck({});
await writer.api("points").upsert({ collectionName: alias, wait: true, points: [
  point(1, "a winter jacket for the cold"), point(2, "a lighthouse keeper's storm lantern"),
  point(3, "a glacier ice axe")] });
const listed = await reader.api("collections").list({});
const found = await reader.api("points").query({
  collectionName: alias, query: byText("warm jacket for winter"), limit: 3n,
  withPayload: payloadToo });
const ids = (points) => points.map((p) => Number(p.id.pointIdOptions.value));

await writer.api("points").delete({ collectionName: alias, wait: true, points: {
  pointsSelectorOneOf: { case: "points", value: { ids: [
    { pointIdOptions: { case: "num", value: 3n } }] } } } });
const left = await reader.api("points").get({ collectionName: alias, ids: [
  { pointIdOptions: { case: "num", value: 2n } },
  { pointIdOptions: { case: "num", value: 3n } }] });
let refused = null;
try {
  await reader.api("points").upsert({ collectionName: alias, points: [point(7, "x")] });
} catch (error) {
  refused = { code: error.code, message: error.rawMessage };
}
console.log(JSON.stringify({
  version: health.version, collections: listed.collections.map((c) => c.name), ids: ids(found.result),
  titles: found.result.map((p) => p.payload.title.kind.value),
  left: ids(left.result), refused,
  warnings: warnings.filter((w) => !w.startsWith("Api key is used")) }));
