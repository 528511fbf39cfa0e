// A tiny example app shipped by docs/examples/recipe.toml.
const http = require("http");
const fs = require("fs");
const path = require("path");

const port = Number(process.env.PORT || 8080);
const version = fs.readFileSync(path.join(__dirname, "VERSION"), "utf8").trim();

http
  .createServer((req, res) => {
    if (req.url === "/health") {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("ok\n");
      return;
    }
    res.writeHead(200, { "content-type": "text/html" });
    fs.createReadStream(path.join(__dirname, "static", "index.html")).pipe(res);
  })
  .listen(port, () => console.log(`example app ${version} on :${port}`));
