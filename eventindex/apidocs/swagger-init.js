// Starts Swagger UI on /docs. A file of its own (not an inline script), so that the docs
// pages' Content-Security-Policy can allow scripts from the service only.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  // No badge from the online validator (swagger.io): nothing leaves the service's host.
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
