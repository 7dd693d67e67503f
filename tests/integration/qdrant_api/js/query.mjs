// qdrant's JavaScript REST client against embedshift's Qdrant API: argv = url, user.
// Prints what it got as one JSON line for the Python test to check.
import { QdrantClient } from "@qdrant/js-client-rest";

const [url, user] = process.argv.slice(2);
const warnings = [];
console.warn = (...args) => warnings.push(args.join(" "));
const client = new QdrantClient({ url, headers: { "x-qdrant-route-affinity": user } });
const collections = (await client.getCollections()).collections.map((c) => c.name);
const info = await client.getCollection("products");
const answer = await client.query("products", {
  query: { text: "warm jacket for winter", model: "any" },
  limit: 3,
  with_payload: ["title"],
});
console.log(JSON.stringify({
  collections,
  size: info.config.params.vectors.size,
  ids: answer.points.map((p) => p.id),
  titles: answer.points.map((p) => p.payload.title),
  warnings,
}));
