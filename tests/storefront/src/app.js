// A storefront built the way shops build them: InstantSearch widgets and Algolia's lite client,
// pointed at `clipfuse serve` through the client's `hosts` option. The page reads where the
// service is from its own URL: index.html?api=127.0.0.1:8000&index=products&key=...
import { liteClient } from 'algoliasearch/lite';
import instantsearch from 'instantsearch.js';
import {
  configure,
  hits,
  pagination,
  rangeInput,
  refinementList,
  searchBox,
  stats,
} from 'instantsearch.js/es/widgets';

const url = new URL(window.location.href);
const api = url.searchParams.get('api') || '127.0.0.1:8000';
const indexName = url.searchParams.get('index') || 'products';
const key = url.searchParams.get('key') || 'search-only';
const appId = url.searchParams.get('app') || 'CLIPFUSE';

const searchClient = liteClient(appId, key, {
  hosts: [{ url: api, accept: 'readWrite', protocol: 'http' }],
});

const search = instantsearch({ indexName, searchClient });

search.addWidgets([
  configure({ hitsPerPage: 8 }),
  searchBox({ container: '#searchbox', placeholder: 'Search products', searchAsYouType: true }),
  stats({ container: '#stats' }),
  refinementList({ container: '#brand', attribute: 'brand', limit: 20 }),
  refinementList({ container: '#color', attribute: 'color', limit: 20 }),
  rangeInput({ container: '#price', attribute: 'price' }),
  hits({
    container: '#hits',
    templates: {
      item: (hit, { html, components }) => html`
        <article class="product" data-id="${hit.objectID}" data-brand="${hit.brand}" data-price="${hit.price}">
          <img src="${hit.image_url}" alt="" width="128" height="128" />
          <h2 class="title">${components.Highlight({ hit, attribute: 'title' })}</h2>
          <p class="price">${Number(hit.price).toFixed(2)}</p>
        </article>`,
      empty: (results, { html }) => html`<p class="empty">No products for “${results.query}”.</p>`,
    },
  }),
  pagination({ container: '#pagination' }),
]);

search.on('error', ({ error }) => {
  document.querySelector('#error').textContent = String(error && error.message ? error.message : error);
});
search.start();
window.__search = search;
