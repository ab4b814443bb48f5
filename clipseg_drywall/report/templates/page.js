(function(){
  const table=document.getElementById('findings'), body=table.tBodies[0];
  const numeric=v=>v!==''&&isFinite(Number(v));
  function compare(a,b){ // empty values last, numbers as numbers, text as text
    if(a===''||b==='') return (a==='')-(b==='');
    return numeric(a)&&numeric(b)?Number(a)-Number(b):a.localeCompare(b);}
  table.tHead.addEventListener('click',function(event){
    const th=event.target.closest('th[data-col]'); if(!th) return;
    const col=Number(th.dataset.col), descending=!th.classList.contains('desc');
    for(const other of table.tHead.querySelectorAll('th[data-col]')) other.classList.remove('asc','desc');
    th.classList.add(descending?'desc':'asc');
    const rows=Array.from(body.rows);
    rows.sort((r,s)=>{const a=r.cells[col].dataset.v,b=s.cells[col].dataset.v;
      const c=(a===''||b==='')?compare(a,b):(descending?compare(b,a):compare(a,b));
      return c||Number(r.cells[0].dataset.v)-Number(s.cells[0].dataset.v);});
    for(const row of rows) body.appendChild(row);});
  const text=document.getElementById('filter'), flaggedOnly=document.getElementById('flagged-only');
  function filter(){
    const words=text.value.toLowerCase(); let shown=0;
    for(const row of body.rows){
      const visible=(!flaggedOnly.checked||row.dataset.flagged==='1')&&row.textContent.toLowerCase().includes(words);
      row.hidden=!visible; shown+=visible;}
    document.getElementById('shown').textContent=shown+' of '+body.rows.length+' photos shown';}
  text.addEventListener('input',filter); flaggedOnly.addEventListener('change',filter); filter();
})();
