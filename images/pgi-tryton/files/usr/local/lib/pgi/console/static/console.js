// Console PGI: progress of a running job (polls its JSON, reloads when it ends), and the sheet's
// print button. The pages work without it (a <noscript> refresh, the browser's own print).
(function () {
  'use strict';
  var print = document.getElementById('imprimer');
  if (print) print.addEventListener('click', function () { window.print(); });
  var box = document.getElementById('job');
  if (!box || (box.dataset.state !== 'queued' && box.dataset.state !== 'running')) return;
  var labels = {queued: 'En attente', running: 'En cours', done: 'Terminée', failed: 'Échec'};
  function tick() {
    fetch(box.dataset.url, {credentials: 'same-origin', headers: {Accept: 'application/json'}})
      .then(function (r) { return r.json(); })
      .then(function (j) {
        if (j.state === 'done' || j.state === 'failed') { window.location.reload(); return; }
        document.getElementById('job-message').textContent = j.message || '';
        document.querySelector('#job-state strong').textContent = labels[j.state] || j.state;
        var p = document.getElementById('job-progress');
        if (p) { p.max = j.total || 1; p.value = j.done; p.textContent = j.done + ' / ' + j.total; }
        var c = document.getElementById('job-count');
        if (c) c.textContent = j.done + ' / ' + (j.total || '?');
        setTimeout(tick, 1500);
      })
      .catch(function () { setTimeout(tick, 4000); });
  }
  setTimeout(tick, 1000);
})();
