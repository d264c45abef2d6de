// Parses an AsyncAPI document with @asyncapi/parser and prints its
// error-severity diagnostics (and how many others there are); exits 1 when
// there is one, or when no document came out.
//   node asyncapi-parse.js FILE
'use strict';
const fs = require('fs');
const { Parser, DiagnosticSeverity } = require('@asyncapi/parser');

(async () => {
    const file = process.argv[2];
    const { document, diagnostics } = await new Parser().parse(fs.readFileSync(file, 'utf8'));
    const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
    for (const d of diagnostics)
        if (d.severity <= DiagnosticSeverity.Warning)
            console.log(`${d.severity === 0 ? 'error' : 'warning'} ${d.code} at /${d.path.join('/')}: ${d.message}`);
    console.log(`${file}: ${errors.length} error(s), ${diagnostics.length - errors.length} other ` +
                `diagnostic(s)${document ? '' : ', no document'}`);
    process.exit(errors.length > 0 || !document ? 1 : 0);
})().catch((e) => {
    console.error(e);
    process.exit(2);
});
