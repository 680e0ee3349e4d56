// /docs: Swagger UI from server/static/vendor (no CDN, no inline script, so it works offline under the CSP).
// "Try it out" sends the token a calltone page of this tab signed in with, as the Authorization header.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  requestInterceptor: (req) => {
    const token = sessionStorage.getItem("calltone.token");
    if (token && !req.headers.Authorization) req.headers.Authorization = `Bearer ${token}`;
    return req;
  },
});
